# Endless recursion: RecursionError with a repeated-line traceback.
def f(n):
    return f(n + 1)


print("recursing")
f(0)
