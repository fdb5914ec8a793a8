# Loaded by python3 -i; the session starts an endless loop, is interrupted,
# and must go on.
import itertools
