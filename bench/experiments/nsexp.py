# Do a run's namespaces slow the python in it? W workers each spawn R runs of
# `python3 hi.py` back to back under `unshare`, with the mount, IPC, UTS and
# PID namespaces (and /proc mounted again) or without; CPU is summed from
# RUSAGE_CHILDREN. Run as root in a directory with hi.py:
#   python3 nsexp.py WORKERS RUNS REPETITIONS
import os, sys, time, resource
W=int(sys.argv[1]); R=int(sys.argv[2]); REPS=int(sys.argv[3])
dn=os.open('/dev/null',os.O_WRONLY)
V={'plain':['/usr/bin/unshare','--fork','/usr/bin/python3','hi.py'],
   'ns':['/usr/bin/unshare','-m','-i','-u','-p','--fork','/usr/bin/python3','hi.py'],
   'ns+proc':['/usr/bin/unshare','-m','-i','-u','-p','--fork','--mount-proc','/usr/bin/python3','hi.py']}
def worker(argv,wr):
    for _ in range(R):
        pid=os.posix_spawn(argv[0],argv,{'PATH':'/usr/bin:/bin'},file_actions=[(os.POSIX_SPAWN_DUP2,dn,1)])
        os.waitpid(pid,0)
    r=resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(wr, f'{r.ru_utime+r.ru_stime}\n'.encode()); os._exit(0)
res={v:[] for v in V}
for rep in range(REPS):
    for v,argv in V.items():
        rd,wr=os.pipe(); pids=[]
        t0=time.time()
        for w in range(W):
            p=os.fork()
            if p==0: os.close(rd); worker(argv,wr)
            pids.append(p)
        os.close(wr)
        for p in pids: os.waitpid(p,0)
        tot=sum(float(x) for x in os.read(rd,1<<16).decode().split()); os.close(rd)
        res[v].append((1000*tot/(W*R), W*R/(time.time()-t0)))
for v in V: print(f'{v:8s}', '  '.join(f'{c:6.2f}ms {r:5.1f}/s' for c,r in res[v]))
