// The shared progress reporter, on a fake clock: quiet for short runs, a line with done/total and
// an ETA every interval in a log, a line rewritten in place on a terminal, ETA of a resumed run.
#include <sstream>

#include <gtest/gtest.h>

#include "rome_collapse/util/progress.h"

namespace rc {
namespace {

struct FakeClock {
  double now = 100.0;
  ProgressReporter::Seconds function() {
    return [this] { return now; };
  }
};

TEST(Progress, LogGetsALineEveryIntervalWithEta) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress("check", 10, "prompts", out, /*terminal=*/false, clock.function(), 5.0);
  clock.now += 2;
  progress.update(1);
  EXPECT_EQ(out.str(), "") << "nothing before the first interval";
  clock.now += 3;  // 5 s in, 5 of 10 done: 5 s to go
  progress.update(5);
  EXPECT_EQ(out.str(), "check: 5/10 prompts (50.0%), elapsed 5s, ETA 5s\n");
  clock.now += 1;
  progress.update(6);
  EXPECT_EQ(out.str(), "check: 5/10 prompts (50.0%), elapsed 5s, ETA 5s\n") << "not again within the interval";
  clock.now += 4;
  progress.advance(4, "12 tokens/s");
  progress.finish();
  EXPECT_EQ(out.str(),
            "check: 5/10 prompts (50.0%), elapsed 5s, ETA 5s\n"
            "check: 10/10 prompts (100.0%), elapsed 10s, ETA 0s, 12 tokens/s\n"
            "check: 10/10 prompts (100.0%), elapsed 10s, ETA 0s\n");
}

TEST(Progress, ShortRunsStayQuiet) {
  std::ostringstream out;
  FakeClock clock;
  {
    ProgressReporter progress("keys", 3, "prompts", out, false, clock.function(), 5.0);
    for (int i = 1; i <= 3; ++i) {
      clock.now += 1;
      progress.update(i);
    }
    progress.finish();
  }
  EXPECT_EQ(out.str(), "");
}

TEST(Progress, TerminalRewritesOneLine) {
  std::ostringstream out;
  FakeClock clock;
  {
    ProgressReporter progress("perplexity", 4, "texts", out, /*terminal=*/true, clock.function());
    clock.now += 0.5;
    progress.update(1);
    EXPECT_EQ(out.str(), "") << "a terminal line starts after one second";
    clock.now += 0.5;
    progress.update(2);
    EXPECT_EQ(out.str(), "\rperplexity: 2/4 texts (50.0%), elapsed 1s, ETA 1s\033[K");
  }  // destroyed without finish(): the line is still ended
  EXPECT_EQ(out.str().back(), '\n');
}

TEST(Progress, ResumedRunsCountOnlyThisRunsRate) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress("stats", 1000, "texts", out, false, clock.function(), 5.0);
  progress.start_at(900);
  // 50 texts in 10 s this run: 50 left take 10 s more (the 900 done before do not count).
  EXPECT_EQ(progress.line(950, 10.0, ""), "stats: 950/1000 texts (95.0%), elapsed 10s, ETA 10s");
  EXPECT_EQ(short_duration(3725), "1h02m");
  EXPECT_EQ(short_duration(185), "3m05s");
  EXPECT_EQ(short_duration(-1), "?");
}

}  // namespace
}  // namespace rc
