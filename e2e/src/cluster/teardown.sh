#!/bin/sh
# Stops one e2e cluster (e2e/src/cluster) and removes everything it made: its processes, by
# PID, in reverse start order (SIGTERM, SIGKILL after a bound), then the namespace holder
# (the init of the cluster's PID namespace: its end kills whatever is left inside, container
# processes included, and drops the namespaces' mounts and network), then the cgroups the
# kubelet made and the cluster's directory.
#
# usage: teardown.sh DIR          stop now (a leftover of a crashed run)
#        teardown.sh DIR --watch  wait until stdin closes, then stop: the harness starts it
#                                 with a pipe from the test process, so the cluster is
#                                 stopped whenever that process ends (exit, panic, SIGINT,
#                                 SIGTERM, SIGKILL)
# DIR/pids holds one "name pid starttime" line per process, in start order; the start time
# (field 22 of /proc/PID/stat) guards against a PID the kernel has since given to another
# process. DIR/cgroup names the cluster's cgroup root.
set -u
dir="$1"
if [ "${2:-}" = "--watch" ]; then
  cat >/dev/null
fi

alive() { # pid starttime
  [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f22 "/proc/$1/stat" 2>/dev/null)" = "$2" ]
}

stop() { # name pid starttime bound(tenths of a second)
  alive "$2" "$3" || return 0
  kill -TERM "$2" 2>/dev/null
  i=0
  while alive "$2" "$3" && [ "$i" -lt "$4" ]; do
    sleep 0.1
    i=$((i + 1))
  done
  if alive "$2" "$3"; then
    echo "teardown: $1 ($2) ignored SIGTERM for $(($4 / 10))s: SIGKILL" >&2
    kill -KILL "$2" 2>/dev/null
  fi
}

if [ -f "$dir/pids" ]; then
  # Reverse start order: the node agents before the control plane, the API server before
  # etcd (it hangs on SIGTERM when etcd is gone first), the holder last.
  tac "$dir/pids" | while read -r name pid start; do
    case "$name" in
      holder) stop "$name" "$pid" "$start" 50 ;;
      *) stop "$name" "$pid" "$start" 100 ;;
    esac
  done
fi

if [ -f "$dir/cgroup" ]; then
  root=$(cat "$dir/cgroup")
  case "$root" in
    dte-*) ;;
    *) echo "teardown: refusing cgroup root '$root'" >&2; exit 1 ;;
  esac
  # Every v1 controller, or the top of a unified (v2) hierarchy.
  for controller in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$controller$root" ] || continue
    i=0
    # Deepest first. The holder's end kills what was left in its PID namespace, but a
    # cgroup whose last process is still exiting refuses rmdir for a moment: retry, bounded.
    while [ -d "$controller$root" ] && [ "$i" -lt 100 ]; do
      find "$controller$root" -depth -type d -exec rmdir {} \; 2>/dev/null
      [ -d "$controller$root" ] && sleep 0.1
      i=$((i + 1))
    done
    [ -d "$controller$root" ] && echo "teardown: could not remove $controller$root" >&2
  done
fi

# Nothing of the cluster is mounted outside its own mount namespace, which is gone with the
# holder; unmount anything below DIR that did appear here all the same before deleting it.
grep -F " $dir/" /proc/self/mountinfo 2>/dev/null | awk '{ print $5 }' | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
case "$dir" in
  /*/dte-*) rm -rf "$dir" ;;
  *) echo "teardown: refusing to delete '$dir'" >&2; exit 1 ;;
esac
