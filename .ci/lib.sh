# Shared by .ci/install-*.sh (sourced). .ci/run sources .ci/env after every script ran.
ci_env_file="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env"

# ci_env_set NAME VALUE: one `export NAME=VALUE` line in .ci/env, however often a script reruns.
ci_env_set() {
  touch "$ci_env_file"
  sed -i "/^export $1=/d" "$ci_env_file"
  echo "export $1=$2" >>"$ci_env_file"
}
