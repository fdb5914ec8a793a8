"""A run holding a secret in its argv (a student passing --api-key=...),
waiting while another student's run looks for it."""
from hostilelib import ready, result

ready()
result()
