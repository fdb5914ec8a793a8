# Issue 13's order.py: three lines on stdout, then a traceback on stderr.
for i in range(3):
    print("line", i)
print(1/0)
