# logging (stderr) between prints (stdout).
import logging

logging.basicConfig(level=logging.DEBUG, format="%(levelname)s:%(name)s:%(message)s")
log = logging.getLogger("app")
for i in range(5):
    print("step", i)
    log.info("finished step %d", i)
log.warning("almost done")
print("result: ok")
log.error("pretending an error")
