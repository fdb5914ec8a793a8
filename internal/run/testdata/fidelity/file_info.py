# Where the script thinks it is.
import os
import sys

print("__name__:", __name__)
print("__file__:", __file__)
print("argv:", sys.argv)
print("cwd:", os.getcwd())
print("path0:", sys.path[0])
print("exists:", os.path.exists(os.path.basename(__file__)))
print("home is cwd:", os.path.expanduser("~") == os.getcwd())
print("executable:", sys.executable)
print("user:", os.environ.get("USER"))
print("encoding:", sys.stdout.encoding, sys.getfilesystemencoding())
