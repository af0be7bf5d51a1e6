// fa-train's driver: data batches, the training loop, evaluation,
// checkpoints, logging and the data-parallel seam. The interface is plain
// C++ so that main.cpp (and anything else that only starts a run) does not
// pay for compiling torch's headers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "config.h"

namespace fatrain {

struct EvalResult {
  std::int64_t step = 0;
  double loss = 0, ppl = 0, accuracy = -1;  // accuracy: classify only
};

struct TrainResult {
  std::vector<std::pair<std::int64_t, double>> train_loss;  // (step, loss) at every logged step
  std::vector<EvalResult> evals;
  std::int64_t first_step = 0, last_step = 0;  // steps run: [first_step, last_step)
  std::string checkpoint;                      // last checkpoint written ("" = none)
  std::string attention_note;                  // what the attention switch really ran
};

// Runs the configuration (validate() first, then the data checks). Throws
// ConfigError for a bad flag or data, other std::exceptions otherwise.
TrainResult train(const TrainConfig& cfg);

// The command line: parses, trains, prints errors; returns the exit status
// (0 ok, 2 bad flags / data, 1 other failure).
int cli_main(int argc, char** argv);

}  // namespace fatrain
