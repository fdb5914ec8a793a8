# A spinner drawn with backspaces.
import sys
import time

sys.stdout.write("working ")
for i in range(12):
    sys.stdout.write("|/-\\"[i % 4])
    sys.stdout.flush()
    time.sleep(0.005)
    sys.stdout.write("\b")
print("done")
