// grpc-proxy-floor: the least a gRPC proxy of Generate streams can cost, as the floor
// that bench/router/router_load.sh sets shoal-router against. It forwards every call to
// one upstream and nothing else: no balancing, admission, retries, metrics, auth or
// deadlines. It uses the async completion-queue API with one queue and one thread per
// --threads, and puts each call's server and client operations on the same queue, so a
// call never changes threads (the leanest arrangement gRPC C++ offers). What shoal-router
// costs above this is the router; what this costs is gRPC and the kernel.
//
//   grpc-proxy-floor --upstream 127.0.0.1:PORT [--port 0] [--threads 1]
//   prints "listening grpc=127.0.0.1:PORT" on stderr once it serves.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"

namespace {

using shoal::v1::GenerateRequest;
using shoal::v1::GenerateResponse;
using shoal::v1::Generation;

class ProxiedCall;

// A completion-queue tag: which call, and which of its operations completed.
struct OpTag {
  enum Op { kAccepted, kUpstreamStarted, kUpstreamRead, kWritten, kUpstreamFinished, kFinished };
  ProxiedCall* call;
  Op op;
};

// One Generate stream: accepted, started upstream, then read upstream -> write downstream
// one message at a time, then the upstream status passed through unchanged.
class ProxiedCall {
 public:
  ProxiedCall(Generation::AsyncService* service, grpc::ServerCompletionQueue* cq, Generation::Stub* upstream)
      : service_(service), cq_(cq), upstream_(upstream) {
    service_->RequestGenerate(&server_context_, &request_, &writer_, cq_, cq_, &accepted_);
  }

  void OnCompleted(OpTag::Op op, bool ok) {
    switch (op) {
      case OpTag::kAccepted:
        new ProxiedCall(service_, cq_, upstream_);  // the next call's slot
        if (!ok) {  // the server is shutting down
          delete this;
          return;
        }
        reader_ = upstream_->PrepareAsyncGenerate(&client_context_, request_, cq_);
        reader_->StartCall(&upstream_started_);
        break;
      case OpTag::kUpstreamStarted:
      case OpTag::kWritten:
        reader_->Read(&in_, &upstream_read_);
        break;
      case OpTag::kUpstreamRead:
        if (ok) {
          out_.Swap(&in_);
          writer_.Write(out_, &written_);
        } else {
          reader_->Finish(&status_, &upstream_finished_);
        }
        break;
      case OpTag::kUpstreamFinished:
        writer_.Finish(status_, &finished_);
        break;
      case OpTag::kFinished:
        delete this;
        break;
    }
  }

 private:
  Generation::AsyncService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  Generation::Stub* const upstream_;
  grpc::ServerContext server_context_;
  GenerateRequest request_;
  grpc::ServerAsyncWriter<GenerateResponse> writer_{&server_context_};
  grpc::ClientContext client_context_;
  std::unique_ptr<grpc::ClientAsyncReader<GenerateResponse>> reader_;
  GenerateResponse in_, out_;
  grpc::Status status_;
  OpTag accepted_{this, OpTag::kAccepted};
  OpTag upstream_started_{this, OpTag::kUpstreamStarted};
  OpTag upstream_read_{this, OpTag::kUpstreamRead};
  OpTag written_{this, OpTag::kWritten};
  OpTag upstream_finished_{this, OpTag::kUpstreamFinished};
  OpTag finished_{this, OpTag::kFinished};
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grpc-proxy-floor: a bare async gRPC proxy of Generate streams, the router benchmark's floor"};
  std::string upstream;
  int port = 0;
  int threads = 1;
  app.add_option("--upstream", upstream, "host:port of the Generate server to forward to")->required();
  app.add_option("--port", port, "port to listen on, 127.0.0.1 (0: any free port)");
  app.add_option("--threads", threads, "completion queues, one polling thread each")->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  auto stub = Generation::NewStub(grpc::CreateChannel(upstream, grpc::InsecureChannelCredentials()));
  Generation::AsyncService service;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(&service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < threads; ++i) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    std::fprintf(stderr, "grpc-proxy-floor: cannot listen on 127.0.0.1:%d\n", port);
    return 1;
  }
  std::fprintf(stderr, "listening grpc=127.0.0.1:%d\n", bound);
  std::vector<std::thread> pollers;
  for (auto& queue : queues) {
    pollers.emplace_back([&service, cq = queue.get(), stub = stub.get()] {
      // Calls waiting to be accepted on this queue; each accepted one posts its successor.
      for (int i = 0; i < 32; ++i) new ProxiedCall(&service, cq, stub);
      void* tag = nullptr;
      bool ok = false;
      while (cq->Next(&tag, &ok)) {
        auto* op = static_cast<OpTag*>(tag);
        op->call->OnCompleted(op->op, ok);
      }
    });
  }
  for (auto& poller : pollers) poller.join();  // runs until killed
  return 0;
}
