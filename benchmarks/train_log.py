"""fa-train's JSON-lines logs (--log-json), read the same way by every
table maker (plot_train.py, lra_table.py)."""
import json
import os


def load(path):
    """(config record or None, train records, eval records) of one log; a
    missing or empty file (a run that died before logging) gives none."""
    cfg, train, evals = None, [], []
    if not os.path.exists(path):
        return cfg, train, evals
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["event"] == "config":
                cfg = r
            elif r["event"] == "train":
                train.append(r)
            elif r["event"] == "eval":
                evals.append(r)
    return cfg, train, evals


def steady(train):
    """The logged intervals after the first, which holds start-up (kernel
    selection, allocator growth); all of them when there is only one."""
    return train[1:] or train
