# Which of a run's v1 groups slows the python in it? Workers each move
# themselves into a group of the variant once, then spawn python3 hi.py
# back to back; the CPU of their children is summed from RUSAGE_CHILDREN.
# Run as root on hybrid (v1) cgroups in a directory with hi.py:
#   python3 cgexp.py WORKERS RUNS REPETITIONS
import os, sys, time, resource
W=int(sys.argv[1]); R=int(sys.argv[2]); REPS=int(sys.argv[3])
MEMPARENT=open('/proc/self/cgroup').read().split('memory:')[1].split('\n')[0]
V1='/sys/fs/cgroup'
def mk(ctrl, name, files):
    base=f'{V1}/{ctrl}'+(MEMPARENT if ctrl=='memory' else '')
    d=f'{base}/cgexp-{name}'
    os.makedirs(d, exist_ok=True)
    for f,v in files.items():
        with open(f'{d}/{f}','w') as fh: fh.write(v)
    return d
def variant(name, w):
    g=[]
    n=f'{name}-{w}'
    if name in ('cpu-noquota',): g.append(mk('cpu',n,{}))
    if name in ('cpu-quota','all'): g.append(mk('cpu',n,{'cpu.cfs_period_us':'100000','cpu.cfs_quota_us':'100000'}))
    if name in ('cpuacct','all'): g.append(mk('cpuacct',n,{}))
    if name in ('memory','all'): g.append(mk('memory',n,{'memory.limit_in_bytes':str(512<<20),'memory.memsw.limit_in_bytes':str(512<<20),'memory.kmem.tcp.limit_in_bytes':str(128<<20)}))
    if name in ('pids','all'): g.append(mk('pids',n,{'pids.max':'256'}))
    return g
dn=os.open('/dev/null',os.O_WRONLY)
def worker(name,w,wr):
    for d in variant(name,w):
        with open(d+'/cgroup.procs','w') as f: f.write(str(os.getpid()))
    for _ in range(R):
        pid=os.posix_spawn('/usr/bin/python3',['python3','hi.py'],{'PATH':'/usr/bin:/bin'},file_actions=[(os.POSIX_SPAWN_DUP2,dn,1)])
        os.waitpid(pid,0)
    r=resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(wr, f'{r.ru_utime+r.ru_stime}\n'.encode()); os._exit(0)
variants=['none','cpu-noquota','cpu-quota','cpuacct','memory','pids','all']
res={v:[] for v in variants}
for rep in range(REPS):
    for v in variants:
        rd,wr=os.pipe(); pids=[]
        for w in range(W):
            p=os.fork()
            if p==0:
                os.close(rd); worker(v,w,wr)
            pids.append(p)
        os.close(wr)
        for p in pids: os.waitpid(p,0)
        tot=sum(float(x) for x in os.read(rd,1<<16).decode().split())
        os.close(rd)
        res[v].append(1000*tot/(W*R))
        for ctrl in ('cpu','cpuacct','memory','pids'):
            base=f'{V1}/{ctrl}'+(MEMPARENT if ctrl=='memory' else '')
            for w in range(W):
                d=f'{base}/cgexp-{v}-{w}'
                if os.path.isdir(d):
                    for _ in range(50):
                        try: os.rmdir(d); break
                        except OSError: time.sleep(0.02)
for v in variants:
    print(f'{v:12s}', ' '.join(f'{x:6.2f}' for x in res[v]), 'ms/run')
