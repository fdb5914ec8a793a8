# Started as ./argv0.py: sys.argv[0] must read as the student wrote it.
import sys

print(sys.argv)
