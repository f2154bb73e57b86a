import oada_jobs


def test_all_is_sorted_and_unique() -> None:
    assert oada_jobs.__all__ == sorted(set(oada_jobs.__all__))


def test_all_names_exist_and_public_names_are_listed() -> None:
    for name in oada_jobs.__all__:
        assert hasattr(oada_jobs, name), name
    public = {
        name
        for name, value in vars(oada_jobs).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("oada_jobs")
    }
    assert public <= set(oada_jobs.__all__)
