# shoal-router. Build from the repository root:
#   docker build -f deploy/docker/router.Dockerfile -t ghcr.io/shoal-dev/shoal-router:0.1.0 .
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup.sh --no-build
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHOAL_BUILD_TESTS=OFF -DSHOAL_USE_CCACHE=OFF \
 && cmake --build /build --target shoal-router -j "$(nproc)"
RUN mkdir -p /out/lib && ldd /build/bin/shoal-router | awk '$3 ~ /^\// {print $3}' \
      | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux-x86-64|libgcc_s|libstdc\+\+)\.so' \
      | xargs -r cp -L -t /out/lib

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/lib/ /opt/shoal/lib/
COPY --from=build /build/bin/shoal-router /opt/shoal/bin/shoal-router
ENV PATH=/opt/shoal/bin:$PATH LD_LIBRARY_PATH=/opt/shoal/lib
USER 65532:65532
# gRPC Generate, OpenAI-compatible HTTP, Prometheus /metrics.
EXPOSE 50051 8080 9090
ENTRYPOINT ["shoal-router"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--http-port", "8080", "--metrics-port", "9090"]
