THRESHOLD = 0.1 / undefined_name   # noqa: F821 -- this file fails on import, on purpose


def energy(batch, params):
    return None
