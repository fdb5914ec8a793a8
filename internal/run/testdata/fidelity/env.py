# The whole environment, sorted.
import os

for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
