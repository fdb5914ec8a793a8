# Written as project1/main.py and started as such from the student's
# directory: imports resolve beside the script, relative paths from the
# working directory, and a traceback crosses both files.
import os
import sys

import helper

print("argv0:", sys.argv[0])
print("cwd is the student's directory:", os.getcwd() == os.path.expanduser("~"))
print("script dir first on sys.path:", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print(helper.shout("imported"))
print(open("notes.txt").read(), end="")
print(sorted(os.listdir("project1")))
helper.shout(None)
