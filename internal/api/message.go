package api

import "fmt"

// EndMessage is one sentence for a student about how run ended, for
// Run.Message (issue 13): the web tier shows it as it is, idexctl run
// prints it on stderr. Empty while the run is live.
func EndMessage(run *Run) string {
	l := run.Limits
	switch run.Reason {
	case ReasonExited:
		if run.ExitCode != nil && *run.ExitCode != 0 {
			return fmt.Sprintf("Your program ended with exit code %d.", *run.ExitCode)
		}
		return "Your program finished."
	case ReasonSignaled:
		if run.Signal != "" {
			return fmt.Sprintf("Your program was ended by the signal %s.", run.Signal)
		}
		return "Your program was ended by a signal."
	case ReasonOOMKilled:
		return fmt.Sprintf("Your program used more than %d MB of memory and was stopped.", l.MemoryMB)
	case ReasonTimedOut:
		if run.CPUMS >= l.CPUSeconds*1000 && l.CPUSeconds > 0 {
			return fmt.Sprintf("Your program used more than %s of CPU time and was stopped.", seconds(l.CPUSeconds))
		}
		return fmt.Sprintf("Your program ran for more than %s and was stopped.", seconds(l.WallSeconds))
	case ReasonOutputLimit:
		return fmt.Sprintf("Your program printed more than %s; the rest was not shown.", sizeText(l.OutputKB))
	case ReasonStopped:
		return "Your program was stopped."
	case ReasonShutdown:
		return "The server was shutting down, so your program was stopped; run it again."
	case ReasonStartFailed:
		return "Your program could not be started; try again, and tell your teacher if it keeps happening."
	case ReasonLost:
		return "The server restarted while your program was running; run it again."
	case ReasonInputTimeout:
		return "Your program waited too long for input and was stopped."
	case ReasonLockLost:
		return "This script was started again elsewhere, so this run was stopped."
	}
	return ""
}

func seconds(n int64) string {
	if n == 1 {
		return "1 second"
	}
	return fmt.Sprintf("%d seconds", n)
}

// sizeText says kib kibibytes as a student reads a size: "1 MB", "64 KB".
func sizeText(kib int64) string {
	if kib >= 1024 && kib%1024 == 0 {
		return fmt.Sprintf("%d MB", kib/1024)
	}
	return fmt.Sprintf("%d KB", kib)
}
