# A list of 10 million ints (issue 13: 256 MiB killed it without a
# MemoryError).
x = list(range(10_000_000))
print(len(x), sum(x))
