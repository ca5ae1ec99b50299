"""The WebQA/SogouQA reading-comprehension metric (``bert4x.metrics``), checked by hand."""

import pytest

from bert4x.metrics import char_f1, exact_match, normalize_answer, webqa_scores


def test_normalisation():
    assert normalize_answer("ＡＢＣ，　def！") == "abcdef"
    assert normalize_answer("《红楼梦》") == "红楼梦"
    assert normalize_answer(" 1 ２ 3 ") == "123"


def test_exact_match_and_char_f1_by_hand():
    assert exact_match("《红楼梦》", "红楼梦") == 1.0
    assert exact_match("红楼", "红楼梦") == 0.0
    assert exact_match("", "") == 1.0
    # 4 common characters: precision 1, recall 4/8 -> F1 2/3.
    assert char_f1("意志坚定", "意志坚定，决不屈服") == pytest.approx(2 / 3)
    # Counts are clipped: "不" is counted once. P = 2/3, R = 1 -> F1 0.8.
    assert char_f1("不不好", "不好") == pytest.approx(0.8)
    assert char_f1("", "红楼梦") == 0.0
    assert char_f1("abc", "xyz") == 0.0


def test_webqa_scores_by_hand():
    scores = webqa_scores(["红楼梦", "", "abc", "意志坚定"],
                          ["红楼梦", "", "xyz", "意志坚定，决不屈服"])
    assert scores["em"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert scores["final"] == pytest.approx((0.5 + (1 + 1 + 0 + 2 / 3) / 4) / 2)
    assert scores["count"] == 4
    best_of = webqa_scores(["诗经"], [["红楼梦", "诗经"]])
    assert best_of["em"] == 1.0
    # No question: zeros, not a division by zero.
    assert webqa_scores([], []) == {"em": 0.0, "f1": 0.0, "final": 0.0, "count": 0}
    with pytest.raises(ValueError, match="1 predictions for 0 gold answers"):
        webqa_scores(["a"], [])
