/* reuse-check: a run's view, for reuse.c's fresh and kept helpers: it must be the
 * student, see no file and no process an earlier run left, and it leaves
 * both behind for the next run to find. On the host (bare) it checks only
 * the uid. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void){
  struct stat st; char comm[32]={0};
  if (getuid()!=200000||getgid()!=200000) return 2;
  int c=open("/proc/1/comm",O_RDONLY); if(c<0) return 8;
  if (read(c,comm,sizeof comm-1)<0) return 8;
  if (strcmp(comm,"exe\n")) return 0;               /* bare: the host's pid 1 */
  if (stat("/tmp/leak",&st)==0) return 3;
  if (stat("/dev/shm/leak",&st)==0) return 4;
  if (open("/tmp/leak",O_CREAT|O_WRONLY,0600)<0) return 5;
  if (open("/dev/shm/leak",O_CREAT|O_WRONLY,0600)<0) return 6;
  DIR *d=opendir("/proc"); struct dirent *e; int procs=0;
  if(!d) return 9;
  while((e=readdir(d))) if(e->d_name[0]>='0'&&e->d_name[0]<='9') procs++;
  if (procs!=2) return 7;                            /* pid 1 and this one */
  if (fork()==0){ setsid(); sleep(100); _exit(0);}   /* a leftover */
  return 0;
}
