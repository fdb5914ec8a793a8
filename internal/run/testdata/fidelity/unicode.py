# Text beyond ASCII on both streams.
import sys

print("ASCII: hello")
print("Latin: café naïve façade")
print("Greek: αβγδε")
print("CJK: 你好，世界")
print("Emoji: 🐍🎉👩‍💻")
print("Combining: e\u0301 a\u0308")
print("RTL: שלום مرحبا")
print("Box: ┌─┐│└┘")
print("stderr: ünïcödé ✓", file=sys.stderr)
print("lengths:", len("👩‍💻"), len("你好".encode()))
