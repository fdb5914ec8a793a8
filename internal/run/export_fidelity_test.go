package run

// ChildEnv is childEnv for the fidelity suite (package run_test): its
// reference runs get exactly the environment a run gets.
func ChildEnv(student, workdir string, terminal bool) []string {
	return childEnv(student, workdir, terminal)
}
