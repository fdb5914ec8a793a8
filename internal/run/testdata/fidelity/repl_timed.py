# Loaded by python3 -i; fifteen expressions then arrive 250 ms apart (issue
# 13: each result must come before the next prompt).
base = 10
