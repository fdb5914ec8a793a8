package cgroup

// V1Dirs exposes a hybrid group's v1 directories to the external tests.
func (g *Group) V1Dirs() []string {
	var dirs []string
	for _, d := range g.v1Dirs {
		dirs = append(dirs, d)
	}
	return dirs
}
