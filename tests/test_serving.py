

def test_within_names_every_class_whose_threshold_holds_the_window() -> None:
    import numpy as np

    from netsiam.serving import Prototypes

    p = Prototypes(["normal", "blocked", "capacity_limit"], [np.zeros((1, 3))] * 3, [0.5, 0.7, 0.7], [1, 1, 1])
    d = np.array([[0.1, 0.9, 0.6], [0.6, 0.8, 0.8], [0.4, 0.6, 0.1], [0.1, 0.9, 0.6]])
    got = p.within(d)
    assert list(got) == [frozenset({"normal", "capacity_limit"}), frozenset(), frozenset(p.classes),
                         frozenset({"normal", "capacity_limit"})]
    # the same as the window-by-window definition
    for row, w in zip(d, got, strict=True):
        assert w == {c for c, x, t in zip(p.classes, row, p.thresholds, strict=True) if x <= t}
    assert len(p.within(np.zeros((0, 3)))) == 0
