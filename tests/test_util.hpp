// Shared helpers for the tests: deterministic random data.
#pragma once

#include <cstdint>
#include <random>

#include <Eigen/Core>

namespace nibble::test {

inline Eigen::MatrixXf gaussian_matrix(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  Eigen::MatrixXf m(rows, cols);
  for (Eigen::Index c = 0; c < cols; ++c)
    for (Eigen::Index r = 0; r < rows; ++r) m(r, c) = dist(rng);
  return m;
}

inline Eigen::MatrixXf uniform_matrix(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Eigen::MatrixXf m(rows, cols);
  for (Eigen::Index c = 0; c < cols; ++c)
    for (Eigen::Index r = 0; r < rows; ++r) m(r, c) = dist(rng);
  return m;
}

}  // namespace nibble::test
