import RelayCtlKit

RelayCtl.main()
