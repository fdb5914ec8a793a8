# 1,000 files open at once (issue 13: 256 open files was the limit).
import os
import tempfile

with tempfile.TemporaryDirectory() as d:
    files = [open(os.path.join(d, f"f{i}.txt"), "w") for i in range(1000)]
    for i, f in enumerate(files):
        f.write(str(i))
    for f in files:
        f.close()
    total = sum(int(open(os.path.join(d, f"f{i}.txt")).read()) for i in range(1000))
print("1000 files open at once, total", total)
