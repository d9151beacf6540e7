"""Networks and the three LightningModules: CanalDetector, RootletClassifier, GradeClassifier."""
