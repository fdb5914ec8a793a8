# A progress bar redrawn in place with \r.
import sys
import time

for i in range(0, 101, 5):
    bar = "#" * (i // 5) + " " * (20 - i // 5)
    sys.stdout.write(f"\rDownloading [{bar}] {i:3d}%")
    sys.stdout.flush()
    time.sleep(0.005)
print("\nDone!")
