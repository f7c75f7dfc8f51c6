/// The one version string every program prints with `--version`.
public enum RelayVersion {
    public static let string = "0.1.0-dev"
}
