# shoal-operator. Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/shoal-dev/shoal-operator:0.1.0 .
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup.sh --no-build
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHOAL_BUILD_TESTS=OFF -DSHOAL_USE_CCACHE=OFF \
 && cmake --build /build --target shoal-operator -j "$(nproc)"
RUN mkdir -p /out/lib && ldd /build/bin/shoal-operator | awk '$3 ~ /^\// {print $3}' \
      | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux-x86-64|libgcc_s|libstdc\+\+)\.so' \
      | xargs -r cp -L -t /out/lib

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/lib/ /opt/shoal/lib/
COPY --from=build /build/bin/shoal-operator /opt/shoal/bin/shoal-operator
ENV PATH=/opt/shoal/bin:$PATH LD_LIBRARY_PATH=/opt/shoal/lib
# The chart runs it as 65532 with a read-only root file system.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["shoal-operator"]
