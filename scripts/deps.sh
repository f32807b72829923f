#!/usr/bin/env bash
# Install the Debian packages mpiformer needs, only those that are missing.
# Idempotent and quick when everything is present. Uses sudo when not root.
set -euo pipefail
pkgs=(openmpi-bin libopenmpi-dev libscalapack-openmpi-dev libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev libdnnl-dev pkg-config make gcc sentencepiece
      sword-text-sparv sword-text-web sword-text-kjv libsword-utils
      gnuplot-nox python3-torch python3-h5py python3-numpy
      slurm-wlm munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
