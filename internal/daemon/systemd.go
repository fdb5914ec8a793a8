package daemon

import (
	"fmt"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notifier tells systemd (Type=notify) where the daemon is; outside
// systemd every notification is a no-op.
type notifier struct{ d *Daemon }

func (d *Daemon) systemd() notifier { return notifier{d} }

func (n notifier) send(states ...string) {
	for _, s := range states {
		var err error
		if n.d.opts.Notify != nil {
			err = n.d.opts.Notify(s)
		} else {
			_, err = sd.SdNotify(false, s)
		}
		if err != nil {
			n.d.log.Warn("notify systemd", "state", s, "err", err)
		}
	}
}

// ready is sent once the socket accepts, and after each reload.
func (n notifier) ready() { n.send(sd.SdNotifyReady, "STATUS="+n.d.statusText()) }

func (n notifier) reloading() { n.send(sd.SdNotifyReloading) }

func (n notifier) status() { n.send("STATUS=" + n.d.statusText()) }

func (n notifier) ping() { n.send(sd.SdNotifyWatchdog) }

func (n notifier) stopping() {
	n.send(sd.SdNotifyStopping, fmt.Sprintf("STATUS=draining, %d runs left", n.d.eng.Active()))
}

// watchdog returns a channel that ticks at half systemd's watchdog
// interval (nil when the watchdog is off) and its stop function.
func (n notifier) watchdog() (<-chan time.Time, func()) {
	iv, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		n.d.log.Warn("read watchdog settings", "err", err)
		return nil, func() {}
	}
	if iv <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(iv / 2)
	n.d.log.Info("watchdog enabled", "ping_every", iv/2)
	return t.C, t.Stop
}

func (d *Daemon) statusText() string {
	n := d.eng.Active()
	if d.eng.Draining() {
		return fmt.Sprintf("draining, %d runs left", n)
	}
	return fmt.Sprintf("%d runs, accepting", n)
}
