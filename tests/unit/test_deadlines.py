from uniws.deadlines import Deadlines


def test_checks_are_never_early_and_come_out_in_order():
    d = Deadlines()
    d.add(10.2, "b")
    d.add(10.0, "a")
    d.add(12.5, "c")
    assert d.pop_due(10.9) == ["a"]          # 10.2 rounds up to 11
    assert d.pop_due(11.0) == ["b"]
    assert d.pop_due(12.9) == []
    assert d.pop_due(13.0) == ["c"]
    assert len(d) == 0


def test_one_bucket_per_second():
    d = Deadlines()
    for i in range(1000):
        d.add(100.5, f"c{i}")
    assert len(d) == 1000
    assert len(d.pop_due(101)) == 1000
