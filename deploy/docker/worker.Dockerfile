# shoal-worker with the CUDA backend. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/shoal-dev/shoal-worker:0.1.0 .
# The build stage is Debian 12 like every other Shoal build (scripts/setup.sh installs the
# same packages as on a developer machine) plus CUDA 13.0 from NVIDIA's Debian 12 apt
# repository; the image runs on NVIDIA's CUDA 13.0 runtime base. The default model
# (SmolLM2-135M-Instruct Q4_1) is baked in at /models so the CPU example runs as is.
ARG CUDA_ARCHITECTURES="80;90"

FROM debian:12 AS build
ARG CUDA_ARCHITECTURES
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl python3-pip \
 && curl -fsSLo /tmp/cuda-keyring.deb \
      https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
 && dpkg -i /tmp/cuda-keyring.deb && apt-get update \
 && apt-get install -y --no-install-recommends \
      cuda-nvcc-13-0 cuda-cudart-dev-13-0 cuda-cccl-13-0 libcublas-dev-13-0 libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup.sh --no-build
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHOAL_BUILD_TESTS=OFF -DSHOAL_USE_CCACHE=OFF \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda-13.0/bin/nvcc -DCUDAToolkit_ROOT=/usr/local/cuda-13.0 \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build /build --target shoal-worker -j "$(nproc)"
# Every shared library the binary needs except the C/C++ runtime, which the base has.
RUN mkdir -p /out/lib && ldd /build/bin/shoal-worker | awk '$3 ~ /^\// {print $3}' \
      | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux-x86-64|libgcc_s|libstdc\+\+)\.so' \
      | xargs -r cp -L -t /out/lib

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
COPY --from=build /out/lib/ /opt/shoal/lib/
COPY --from=build /build/bin/shoal-worker /opt/shoal/bin/shoal-worker
COPY --from=build /root/.cache/shoal/models/SmolLM2-135M-Instruct.Q4_1.gguf /models/
ENV PATH=/opt/shoal/bin:$PATH LD_LIBRARY_PATH=/opt/shoal/lib:$LD_LIBRARY_PATH SHOAL_MODELS_DIR=/models \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
# gRPC Generate (leader) and internal ranks; Prometheus /metrics.
EXPOSE 50051 9090
ENTRYPOINT ["shoal-worker"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090"]
