// common/codes.h — the integer codes of the op arguments (docs/kernels.md): one
// definition for the kernels (CPU and CUDA), the argument checks, the autograd node
// and the Python module, which returns them from metakern._C.codes() (the Python
// side's copy is metakern/_contract.py). Host and device code; no includes.
#pragma once

namespace metakern {

// act: the activation after every layer but the last.
enum Act : int { kIdentity = 0, kRelu = 1, kTanh = 2, kSigmoid = 3 };

// loss: the task-mean loss (MSE over N*O entries, cross-entropy over N points).
enum Loss : int { kMSE = 0, kCrossEntropy = 1 };

// reduction: how metakern._C.maml_loss reduces the per-task losses.
enum Reduction : int { kReduceMean = 0, kReduceSum = 1, kReduceNone = 2 };

// The name of each code, as metakern._C.codes() reports them.
struct CodeName {
  const char* name;
  int code;
};
inline constexpr CodeName kActNames[] = {{"identity", kIdentity}, {"relu", kRelu}, {"tanh", kTanh},
                                         {"sigmoid", kSigmoid}};
inline constexpr CodeName kLossNames[] = {{"mse", kMSE}, {"cross_entropy", kCrossEntropy}};
inline constexpr CodeName kReductionNames[] = {{"mean", kReduceMean}, {"sum", kReduceSum}, {"none", kReduceNone}};

}  // namespace metakern
