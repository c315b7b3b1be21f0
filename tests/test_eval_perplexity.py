"""Rolling windows for perplexity: the harness's windows at stride = window, full coverage otherwise."""

import pytest

from xmodel2.errors import UserError
from xmodel2.eval.perplexity import read_texts, rolling_windows


def our_pairs(tokens, prefix, max_length, stride=None):
    sequence = [prefix] + tokens
    return [(sequence[w.start:w.end], sequence[w.end - w.predicted + 1:w.end + 1])
            for w in rolling_windows(len(tokens), max_length, stride)]


@pytest.mark.parametrize("n, max_length", [(1, 4), (4, 4), (5, 4), (17, 4), (100, 7), (64, 64), (3, 16)])
def test_windows_equal_lm_eval_rolling_windows(n, max_length):
    utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(100, 100 + n))
    expected = [utils.make_disjoint_window(w) for w in
                utils.get_rolling_token_windows(tokens, prefix_token=-1, max_seq_len=max_length, context_len=1)]
    ours = [(inputs[:len(inputs) - len(targets) + 1], targets) for inputs, targets in our_pairs(tokens, -1, max_length)]
    assert ours == [(list(a), list(b)) for a, b in expected]


@pytest.mark.parametrize("stride", [1, 2, 3, 8])
def test_strided_windows_predict_each_token_once_with_enough_context(stride):
    tokens, window = list(range(50)), 8
    pairs = our_pairs(tokens, -1, window, stride)
    predicted = [t for _, targets in pairs for t in targets]
    assert predicted == tokens
    for inputs, targets in pairs[1:]:
        assert len(inputs) == window and len(targets) <= stride  # at least window - stride of context


def test_bad_stride_and_files(tmp_path):
    with pytest.raises(UserError, match="stride must be in 1..8"):
        rolling_windows(10, 8, 9)
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n{"txt": 1}\n')
    with pytest.raises(UserError, match="a.jsonl:2"):
        read_texts(tmp_path / "a.jsonl")
    (tmp_path / "plain.txt").write_text("one document\n\nin two paragraphs")
    assert read_texts(tmp_path / "plain.txt") == ["one document\n\nin two paragraphs"]
