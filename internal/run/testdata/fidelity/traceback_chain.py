# A warning, then a chained exception's traceback.
import warnings


def parse(s):
    return int(s)


def load(values):
    try:
        return [parse(v) for v in values]
    except ValueError as e:
        raise RuntimeError("could not load values") from e


warnings.warn("this is a warning")
print("loading")
load(["1", "two"])
