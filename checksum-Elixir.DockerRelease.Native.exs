# The sha256 of every prebuilt NIF artifact of this version, written by
# `scripts/nif-artifact.sh checksums` when a release is made (.github/workflows/release.yml).
# Empty in the repository: a checkout builds the NIF from source.
%{}
