# Multi-byte characters written one byte per write, invalid bytes, and a
# character cut off at the very end.
import sys

out = sys.stdout.buffer
for ch in "é€𝄞🐍":
    for b in ch.encode():
        out.write(bytes([b]))
        out.flush()
out.write(b"\n")
out.flush()
out.write(b"bad bytes: \xff\xfe \xc3(\n")
out.flush()
u = "ü".encode()
sys.stderr.buffer.write(b"stderr split: " + u[:1])
sys.stderr.flush()
sys.stderr.buffer.write(u[1:] + b"\n")
sys.stderr.flush()
out.write(b"ends mid-char: \xe2\x82")
out.flush()
