// Everything a C++ program needs: #include <ekinet/ekinet.hpp> and link ekinet::ekinet.
#pragma once

#include "ekinet/array.hpp"
#include "ekinet/build_info.hpp"
#include "ekinet/context.hpp"
#include "ekinet/errors.hpp"
#include "ekinet/kalman_update.hpp"
#include "ekinet/loss_update.hpp"
#include "ekinet/losses.hpp"
#include "ekinet/network.hpp"
#include "ekinet/noise.hpp"
#include "ekinet/random.hpp"
#include "ekinet/randomization.hpp"
#include "ekinet/report.hpp"
#include "ekinet/statistics.hpp"
