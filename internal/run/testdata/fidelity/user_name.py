# The student's uid and gid have the student's name, as a terminal user's
# account has (issue 13).
import getpass
import grp
import os
import pathlib
import pwd
import subprocess

print("pwd:", pwd.getpwuid(os.getuid()).pw_name)
print("grp:", grp.getgrgid(os.getgid()).gr_name)
print("getuser:", getpass.getuser())
open("mine.txt", "w").close()
print("owner:", pathlib.Path("mine.txt").owner(), pathlib.Path("mine.txt").group())
print("whoami:", subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip())
print("id:", subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip())
