# Started as ./cwd_project.py with the working directory project1 (issue
# 13: "cwd": "project1"), as IDEs that run a script from its own folder do.
import os
import sys

print("argv0:", sys.argv[0])
print("cwd ends with project1:", os.getcwd().endswith("/project1"))
print(open("input.txt").read(), end="")
with open("output.txt", "w") as f:
    f.write("written in project1\n")
print(sorted(os.listdir(".")))
