# Writes files in its directory and reads them back (data.txt is given).
import csv
import json
import os

nums = [int(x) for x in open("data.txt")]
with open("sorted.txt", "w") as f:
    for n in sorted(nums):
        f.write(f"{n}\n")
with open("sorted.txt", "a") as f:
    f.write("end\n")
print(open("sorted.txt").read(), end="")
os.makedirs("out", exist_ok=True)
with open("out/result.json", "w") as f:
    json.dump({"sum": sum(nums), "names": ["Zoë", "Ada"]}, f, ensure_ascii=False)
print(json.load(open("out/result.json")))
with open("out/table.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["n", "square"])
    for n in nums:
        w.writerow([n, n * n])
print(repr(open("out/table.csv", newline="").read()))
with open("bytes.bin", "wb") as f:
    f.write(bytes(range(256)))
print(os.path.getsize("bytes.bin"), sorted(os.listdir("out")))
