# Source me:  . scripts/podman-env.sh
# Points podman at scripts/containers.conf (runtime runc, nofile/nproc ulimits 1024), which is
# what podman needs on the development sandbox. Harmless elsewhere; normal machines need nothing.
_majordomo_scripts="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export CONTAINERS_CONF="$_majordomo_scripts/containers.conf"
unset _majordomo_scripts
