#!/usr/bin/env bash
# Build the three images of llm-batcher, tagged with the chart's appVersion, the tag the Helm
# chart and compose.yaml run by default:
#
#   images/build.sh                            # llm-batcher-{api,worker,llm-mock}:<appVersion>
#   images/build.sh --network host             # more arguments go to every `docker build`
#   LLMB_IMAGE_REGISTRY=registry.example.com/llmb images/build.sh   # registry.example.com/llmb/...
#
# Then put them where the cluster finds them: `kind load docker-image <images>` for kind,
# `minikube image load <images>` for minikube, `docker push` for a registry (the chart's
# api.image.registry and worker.image.registry, or global.imageRegistry). The image names are
# printed last, one a line.
#
# Variables: LLMB_IMAGE_TAG (default: appVersion of charts/llm-batcher/Chart.yaml),
# LLMB_IMAGE_REGISTRY (default: none), LLMB_BASE_IMAGE (the build's BASE_IMAGE; default the
# Dockerfile's), LLMB_DOCKER (default: docker). Run from anywhere; it builds the repository.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

tag=${LLMB_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$repo/charts/llm-batcher/Chart.yaml")}
if [ -z "$tag" ]; then
  echo "images/build.sh: no appVersion in charts/llm-batcher/Chart.yaml; set LLMB_IMAGE_TAG" >&2
  exit 1
fi
prefix=${LLMB_IMAGE_REGISTRY:+${LLMB_IMAGE_REGISTRY%/}/}
docker=${LLMB_DOCKER:-docker}
build_args=()
if [ -n "${LLMB_BASE_IMAGE:-}" ]; then build_args+=(--build-arg "BASE_IMAGE=$LLMB_BASE_IMAGE"); fi

images=()
# One target at a time: they share the Dockerfile's stages, so the second and third builds
# reuse the first one's layers.
for target in api worker llm-mock; do
  image="${prefix}llm-batcher-${target}:${tag}"
  echo "images/build.sh: building $image" >&2
  DOCKER_BUILDKIT=1 "$docker" build -f "$repo/images/Dockerfile" --target "$target" \
    -t "$image" ${build_args[@]+"${build_args[@]}"} "$@" "$repo" >&2
  images+=("$image")
done
printf '%s\n' "${images[@]}"
