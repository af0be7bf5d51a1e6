"""decode_bench.make_cache, which decode_bench and ncu_target build their
caches with: shapes, the views SDPA and flashattn share, block tables."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import decode_bench  # noqa: E402

D = decode_bench.D


def test_contiguous_is_a_view_of_the_head_major_store():
    kc, vc, table, ks, vs = decode_bench.make_cache(2, 4, 32, "contiguous", "cpu")
    assert ks.shape == (2, 4, 32, D) and kc.shape == (2, 32, 4, D) and table is None
    assert kc.data_ptr() == ks.data_ptr() and torch.equal(kc[1, 5, 3], ks[1, 3, 5])
    assert vc.data_ptr() == vs.data_ptr()


def test_nhd_has_no_store():
    kc, vc, table, ks, vs = decode_bench.make_cache(2, 4, 32, "contiguous-nhd", "cpu")
    assert kc.shape == (2, 32, 4, D) and kc.is_contiguous() and ks is None and vs is None and table is None


@pytest.mark.parametrize("layout", ["paged16", "paged16-inorder"])
def test_paged_tables_cover_every_page_once(layout):
    kc, vc, table, _, _ = decode_bench.make_cache(3, 4, 64, layout, "cpu")
    assert kc.shape == (12, 16, 4, D) and table.shape == (3, 4) and table.dtype == torch.int32
    assert sorted(table.flatten().tolist()) == list(range(12))
    if layout.endswith("-inorder"):
        assert table.flatten().tolist() == list(range(12))


def test_a_length_off_the_pages_is_an_error():
    with pytest.raises(ValueError, match="multiple of the page size 16"):
        decode_bench.make_cache(1, 4, 40, "paged16", "cpu")
