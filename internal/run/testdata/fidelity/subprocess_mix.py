# Child processes writing to the same stdout and stderr.
import os
import subprocess
import sys

print("parent before", flush=True)
os.system("echo from shell; echo shell err >&2")
subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
r = subprocess.run(["printf", "captured %s", "text"], capture_output=True, text=True)
print("captured:", r.stdout)
print("parent after")
