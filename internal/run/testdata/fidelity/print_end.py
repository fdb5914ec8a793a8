# print's sep and end, \t and \r in a pipe, no final newline.
import sys

print("a", "b", "c", sep="-", end="|")
print("no newline", end="")
print()
print("tab\tseparated\tvalues")
print("carriage\rreturn")
sys.stdout.write("write without newline")
sys.stderr.write("stderr without newline")
print("\nlast", end="")
